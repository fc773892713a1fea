import sys

from megatron_huatuo.eval.cli import main

sys.exit(main())

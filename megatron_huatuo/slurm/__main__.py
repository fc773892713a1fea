import sys

from megatron_huatuo.slurm.launcher import main

sys.exit(main())

"""``python -m preprocessing.dataset tokenize|build|inspect ...`` (see ``docs/dataset.md``)."""
from preprocessing.dataset.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m llm_serve.cli`: the same as the `llm-serve` console script."""

import sys

from llm_serve.cli import main

sys.exit(main())

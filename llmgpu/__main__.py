"""`python -m llmgpu ...`: the same command line as the `llmgpu` script (llmgpu/cli.py)."""
import sys

from .cli import main

sys.exit(main())

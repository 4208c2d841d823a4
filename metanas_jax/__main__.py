"""``python -m metanas_jax`` = the ``metanas`` command."""
import sys

from metanas_jax.cli import main

sys.exit(main())

"""python -m orchestrator -> cli.main()."""
import sys

from orchestrator.cli import main

sys.exit(main())

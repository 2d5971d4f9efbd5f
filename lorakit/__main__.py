"""Entry point: python -m lorakit."""

from lorakit.cli import main

raise SystemExit(main())

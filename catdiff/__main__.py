import sys

from catdiff.cli import main

sys.exit(main())

import sys

from cvis.cli import main

sys.exit(main())

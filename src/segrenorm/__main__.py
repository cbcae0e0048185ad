import sys

from segrenorm.cli import main

sys.exit(main())

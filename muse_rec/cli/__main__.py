import sys

from muse_rec.cli import main

sys.exit(main())

import sys

from muse_rec.cli import main
from muse_rec.exit_codes import record

code = main()
record(code)  # for a local `muse-rec launch`: torchrun reports any failed rank as 1
sys.exit(code)

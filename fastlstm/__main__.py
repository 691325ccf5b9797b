import sys

from fastlstm.cli import main

sys.exit(main())

import sys

from bybitsim.app import main

sys.exit(main())

import sys

from publisher.service import main

sys.exit(main())

import sys

from wsgiwatch.cli.main import main

sys.exit(main())

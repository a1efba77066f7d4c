import sys

from llmguard._cli import main

sys.exit(main())

import sys

from stack.launch import main

sys.exit(main())

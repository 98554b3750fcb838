import sys

from tests.manifests.check import main

sys.exit(main(sys.argv[1:]))

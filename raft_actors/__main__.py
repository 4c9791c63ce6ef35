"""``python -m raft_actors`` is the ``raft-actors`` command."""

import sys

from .cli import main

sys.exit(main())

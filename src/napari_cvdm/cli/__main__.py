"""``python -m napari_cvdm.cli``: the same as the ``cvdm`` command."""

import sys

from . import main

sys.exit(main())

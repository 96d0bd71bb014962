"""``python -m demon.share``: see the package."""

from demon.share import main

raise SystemExit(main())

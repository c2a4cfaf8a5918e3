"""``python -m ssl_dr.data.synthetic --root DIR [...]``: write (or reuse) the synthetic dataset."""

from ssl_dr.data.synthetic.writer import main

raise SystemExit(main())

from analyze.cli import main

raise SystemExit(main())

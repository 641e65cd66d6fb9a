from dump.cli import main

raise SystemExit(main())

from nattrail.cli import main

raise SystemExit(main())

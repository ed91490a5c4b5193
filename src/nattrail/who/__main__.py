from nattrail.who.command import main

raise SystemExit(main())

from edgevision.cli.main import main

raise SystemExit(main())

from modelwire_server.cli import main

raise SystemExit(main())

from cnnc.cli import main

raise SystemExit(main())

from apex_gui.cli import main

raise SystemExit(main())

from pawlab.cli import main

raise SystemExit(main())

from frankenlab.cli.app import main

main()

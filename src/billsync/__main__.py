from billsync.cli.main import main

main()

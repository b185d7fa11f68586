from sd_cli.cli.app import main

main()

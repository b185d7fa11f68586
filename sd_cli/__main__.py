from sd_cli.cli import main

main()

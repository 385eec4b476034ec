from iyclo.cli.main import main

main()

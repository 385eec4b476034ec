from iyclo.cli.start import start

start()

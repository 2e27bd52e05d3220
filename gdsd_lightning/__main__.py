from gdsd_lightning.cli import main

main()

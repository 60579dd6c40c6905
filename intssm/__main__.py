from intssm.cli import main

main()

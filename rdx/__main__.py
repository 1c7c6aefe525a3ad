from rdx.cli import main

main()

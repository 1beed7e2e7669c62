from qemuvm.cli import main

main()

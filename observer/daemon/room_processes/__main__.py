from observer.daemon.room_processes.child import main

main()

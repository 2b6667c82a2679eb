// Command pause is the first process of every pod sandbox on the test node: it keeps the
// pod's network namespace alive until the kubelet stops the sandbox. It ends on SIGTERM or
// SIGINT, and reaps orphans meanwhile (it is PID 1 of its namespace when the pod shares one).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	children := make(chan os.Signal, 16)
	signal.Notify(children, syscall.SIGCHLD)
	for {
		select {
		case <-stop:
			return
		case <-children:
			for {
				pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}

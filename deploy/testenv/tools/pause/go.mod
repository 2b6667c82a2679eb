// The sandbox ("pause") program of the test node's pods: holds a pod's namespaces and
// waits to be stopped. Ours, because no image can be pulled here.
module p2p-mpc.dev/testenv/tools/pause

go 1.26.0

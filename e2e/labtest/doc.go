// Package labtest gives Kiln's lab tests real devices under test: each DUT is
// a Linux network namespace reached from the host through its own veth pair
// (one /30 of 10.213.0.0/16), running a private OpenSSH server that admits
// only the DUT's own user with a key made for the test, and it is powered off
// and on by killing and restarting that namespace's processes, from the test
// or from shell scripts a worker can run as its power commands.
//
// It needs root, ip (iproute2), sshd, ssh and ssh-keygen (openssh-server and
// openssh-client), useradd and usermod (passwd); without them New skips the
// test, or fails it under KILN_REQUIRE_ALL=1. It must never start or touch
// the system's ssh service, and it changes nothing on the host that it does
// not create itself, except what follows.
//
// Left on the machine after the tests: /run/sshd (sshd's privilege
// separation directory), the lock file /run/kiln-labtest.lock, and the user
// accounts kilnlabN, one per DUT slot ever in use at the same time (so as
// many as the most DUTs that ever ran at once, reused by later tests). The
// accounts are kept rather than deleted because userdel refuses a user that
// still owns a process, and a killed DUT's processes may linger as zombies
// until init reaps them. A test binary that is killed before its cleanup
// leaves its namespace, processes and files behind; the next New deletes
// them once that process is gone.
package labtest

#!/usr/bin/env tclsh8.6
# The seed's blocking echo server: serves one client at a time.
# Usage: tclsh blocking_server.tcl ?-p PORT?   (PORT 0 = any)
set port 1234
if {[lindex $argv 0] eq "-p"} { set port [lindex $argv 1] } elseif {[llength $argv]} { set port [lindex $argv 0] }

namespace eval echo {
  proc echo {sock host port} {
    while {![eof $sock]} {
      puts $sock [gets $sock]
    }
  }
  proc accept {sock host port} {
    chan configure $sock -blocking 1 -buffering line
    echo $sock $host $port
    close $sock
  }
}

set srv [socket -server echo::accept -myaddr 127.0.0.1 $port]
puts "listening on 127.0.0.1:[lindex [chan configure $srv -sockname] 2]"
flush stdout
vwait forever

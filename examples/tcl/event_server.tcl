#!/usr/bin/env tclsh8.6
# The seed's event-driven echo server (non-blocking sockets, chan event).
# Usage: tclsh event_server.tcl ?-p PORT?   (PORT 0 = any)
set port 1234
if {[lindex $argv 0] eq "-p"} { set port [lindex $argv 1] } elseif {[llength $argv]} { set port [lindex $argv 0] }

namespace eval echo {
  proc echo {sock host port} {
    if {[eof $sock]} {
      close $sock
      return
    }
    # A non-blocking gets returns "" for a partial line: only echo full ones.
    if {[gets $sock line] >= 0} {
      puts $sock $line
    }
  }
  proc accept {sock host port} {
    chan configure $sock -blocking 0 -buffering line
    chan event $sock readable [list [namespace current]::echo $sock $host $port]
  }
}

set srv [socket -server echo::accept -myaddr 127.0.0.1 $port]
puts "listening on 127.0.0.1:[lindex [chan configure $srv -sockname] 2]"
flush stdout
vwait forever

#!/usr/bin/env tclsh8.6
# The same coroutine echo server using tcllib's coroutine::util gets
# (Debian's tcllib), for the benchmark.
# Usage: tclsh tcllib_server.tcl ?-p PORT?
package require coroutine
set port 1234
if {[lindex $argv 0] eq "-p"} { set port [lindex $argv 1] }

namespace eval echo {
  proc echo {sock} {
    while {![eof $sock]} {
      puts $sock [coroutine::util gets $sock]
    }
  }
  proc handle {sock} {
    echo $sock
    close $sock
  }
  namespace eval clients {}
  proc accept {sock host port} {
    chan configure $sock -blocking 0 -buffering line
    coroutine clients::$host:$port handle $sock
  }
}

set srv [socket -server echo::accept -myaddr 127.0.0.1 $port]
puts "listening on 127.0.0.1:[lindex [chan configure $srv -sockname] 2]"
flush stdout
vwait forever

#!/usr/bin/env tclsh8.6
# The seed's coroutine echo server with its pure-Tcl coroutine gets (baseline
# for the benchmark).  Logging removed so only the I/O path is measured.
# Usage: tclsh seed_server.tcl ?-p PORT?
set port 1234
if {[lindex $argv 0] eq "-p"} { set port [lindex $argv 1] }

namespace eval echo {
  proc gets {args} {
    if {[info coroutine] == ""} {
      return [::gets {*}$args]
    } else {
      set sock [lindex $args end]
      while {[set data [::gets $sock]] == ""} {
        if {[eof $sock]} {
          return -code return {}
        }
        yield
      }
      return $data
    }
  }
  proc echo {sock host port} {
    while {![eof $sock]} {
      puts $sock [gets $sock]
    }
  }
  proc handle {sock host port} {
    yield
    echo $sock $host $port
    close $sock
  }
  namespace eval clients {}
  proc accept {sock host port} {
    coroutine clients::$host:$port handle $sock $host $port
    chan configure $sock -blocking 0 -buffering line
    chan event $sock readable [namespace current]::clients::$host:$port
  }
}

set srv [socket -server echo::accept -myaddr 127.0.0.1 $port]
puts "listening on 127.0.0.1:[lindex [chan configure $srv -sockname] 2]"
flush stdout
vwait forever

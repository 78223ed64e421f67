#!/usr/bin/env tclsh8.6
# The seed's coroutine echo server, with weft::gets doing the waiting.
# Usage: tclsh coro_server.tcl ?-p PORT? ?-quiet? ?-epoll?   (PORT 0 = any)
# Needs the weft package on auto_path (TCLLIBPATH=build/tcl, or installed).
package require weft

set port 1234
set opts {}
for {set i 0} {$i < [llength $argv]} {incr i} {
    switch -- [lindex $argv $i] {
        -p      { set port [lindex $argv [incr i]] }
        -quiet  { lappend opts -quiet }
        -epoll  { weft::notifier epoll }
        default { set port [lindex $argv $i] }
    }
}

namespace eval echo {
    proc echo {sock} {
        while {![eof $sock]} {
            weft::puts $sock [weft::gets $sock]
        }
    }
}

set srv [weft::serve -host 127.0.0.1 {*}$opts $port echo::echo]
puts "listening on 127.0.0.1:[lindex [chan configure $srv -sockname] 2]"
flush stdout
vwait forever

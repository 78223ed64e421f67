#!/usr/bin/env tclsh8.6
# Lines per second through three coroutine echo servers, same run:
#   weft    examples/tcl/coro_server.tcl (weft::serve, weft::gets/puts)
#           (also shown with -epoll, the weft notifier, for reference)
#   seed    bench/tcl/seed_server.tcl    (the seed's pure-Tcl coroutine gets)
#   tcllib  bench/tcl/tcllib_server.tcl  (tcllib coroutine::util gets)
# The client is bench/tcl/loadgen (C, epoll), which verifies every echoed
# byte.  Each server runs in its own tclsh; loopback only.
# Environment: TCLLIBPATH (weft build dir), WEFT_LOADGEN (loadgen path),
# WEFT_BENCH_SECONDS (per measurement, default 1), WEFT_BENCH_ROUNDS (default 5).
set here [file dirname [file normalize [info script]]]
set root [file dirname [file dirname $here]]
set loadgen $env(WEFT_LOADGEN)
set secs [expr {[info exists env(WEFT_BENCH_SECONDS)] ? $env(WEFT_BENCH_SECONDS) : 1}]

set servers [list \
    weft   [list [file join $root examples tcl coro_server.tcl] -quiet] \
    epoll  [list [file join $root examples tcl coro_server.tcl] -quiet -epoll] \
    seed   [list [file join $here seed_server.tcl]] \
    tcllib [list [file join $here tcllib_server.tcl]]]

proc start {script args} {
    set f [open |[list [info nameofexecutable] $script -p 0 {*}$args 2>@stderr] r]
    if {[gets $f line] < 0 || ![regexp {listening on 127\.0\.0\.1:(\d+)} $line -> port]} {
        error "server $script did not start"
    }
    return [list $f $port]
}

proc measure {port conns window} {
    set out [exec $::loadgen -p $port -c $conns -w $window -s 40 -e crlf \
        -d $::secs -T 60 2>@1]
    if {![regexp {lines_per_sec=(\d+)} $out -> rate]} { error "loadgen: $out" }
    return $rate
}

set rounds [expr {[info exists env(WEFT_BENCH_ROUNDS)] ? $env(WEFT_BENCH_ROUNDS) : 5}]
set shapes {{1 1} {50 1} {50 16}}

# All three servers stay up for the whole run; measurements are interleaved
# (weft, seed, tcllib, weft, ...) and the median of the rounds is reported,
# so background noise hits all three alike.
set running {}
foreach {name cmd} $servers {
    dict set running $name [start {*}$cmd]
}
proc median {l} {
    set l [lsort -integer $l]
    lindex $l [expr {[llength $l] / 2}]
}
puts [format "%-18s %10s %10s %10s %10s %11s %12s" "clients x window" weft seed tcllib weft/seed weft/tcllib weft+epoll]
foreach shape $shapes {
    lassign $shape conns window
    set samples [dict create weft {} seed {} tcllib {} epoll {}]
    for {set r 0} {$r < $rounds} {incr r} {
        foreach name {weft seed tcllib epoll} {
            dict lappend samples $name [measure [lindex [dict get $running $name] 1] $conns $window]
        }
    }
    foreach name {weft seed tcllib epoll} { set m($name) [median [dict get $samples $name]] }
    puts [format "%-18s %10d %10d %10d %9.2fx %10.2fx %12d" "$conns x $window" \
        $m(weft) $m(seed) $m(tcllib) \
        [expr {double($m(weft)) / $m(seed)}] [expr {double($m(weft)) / $m(tcllib)}] \
        $m(epoll)]
}
dict for {name srv} $running {
    lassign $srv f port
    catch {exec kill [pid $f]}
    catch {close $f}
}
puts "(lines/s echoed, median of $rounds interleaved runs of $secs s; ratio > 1: weft faster."
puts " weft, seed and tcllib all use Tcl's select notifier; weft+epoll is the same weft"
puts " server with weft::notifier epoll, for reference)"

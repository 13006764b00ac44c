# gnuplot script of bench/soak.sh: RSS, fds, msg/s and the probe's p99 over the run.
# Variables (gnuplot -e): csv (soak.csv), png (output), restart (seconds of the fault, or ""),
# title.
set datafile separator ","
set datafile missing ""
set terminal pngcairo size 1100,1300 font "DejaVu Sans,10"
set output png
set multiplot layout 4,1 title title font ",13"
set xlabel "minutes"
set grid
set key top left opaque box
# Room above the curves for the key and the fault label.
set offsets graph 0, graph 0, graph 0.18, graph 0
set lmargin 12
set xrange [0:*]
if (restart ne "") set arrow 1 from first restart/60.0, graph 0 to first restart/60.0, graph 1 nohead dt 2 lc rgb "red"
if (restart ne "") set label 1 "fault" at first restart/60.0, graph 0.93 offset 0.5,0 tc rgb "red" front

set ylabel "RSS (MiB)"
set yrange [0:*]
plot csv using ($1/60):5 skip 1 with lines lw 2 lc rgb "#1f77b4" title "RSS"

set ylabel "file descriptors"
plot csv using ($1/60):6 skip 1 with lines lw 2 lc rgb "#ff7f0e" title "open fds", \
     csv using ($1/60):7 skip 1 with lines lw 1 lc rgb "#2ca02c" title "sockets", \
     csv using ($1/60):8 skip 1 with lines lw 1 lc rgb "#9467bd" title "threads"

set ylabel "messages/s"
plot csv using ($1/60):15 skip 1 with lines lw 1.5 lc rgb "#1f77b4" title "received (PUBLISH in)", \
     csv using ($1/60):16 skip 1 with lines lw 1.5 lc rgb "#d62728" title "sent (PUBLISH out)"

set ylabel "probe p99 (ms)"
set key top right
set logscale y
set yrange [*:*]
plot csv using ($1/60):17 skip 1 with linespoints pt 7 ps 0.4 lw 1 lc rgb "#8c564b" title "p99 of each 5 s window (QoS 1, 50 msg/s)"
unset logscale y
unset multiplot

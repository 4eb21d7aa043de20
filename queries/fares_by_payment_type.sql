-- name: Fares and tips by payment type
-- description: Per day and payment type (null when the export left it blank), over completed trips: trips, total fare and total tip, rounded to cents.
SELECT
    trip_date,
    CAST(payment_type AS BIGINT) AS payment_type,
    COUNT(*) AS trips,
    CAST(ROUND(SUM(fare_amount), 2) AS DECIMAL(20, 2)) AS total_fare,
    CAST(ROUND(SUM(COALESCE(tip_amount, 0)), 2) AS DECIMAL(20, 2)) AS total_tip
FROM trips
WHERE trip_completed
GROUP BY trip_date, CAST(payment_type AS BIGINT)
ORDER BY trip_date, payment_type NULLS LAST
